"""The protocol's one source, ``protocol.json``: technique settings, presets, job fields, exit codes, events.

The engine validates against it, the Slicer module reads the same file (plain JSON, no
torch), and the tables in ``docs/protocol.md`` and the README are generated from it:
``python -m AsymSegTrainer.protocol --write-docs`` rewrites them, ``--check-docs`` fails
when they are out of date (a test runs the check). Importing this module imports nothing
heavy.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

PROTOCOL_FILE = Path(__file__).with_name("protocol.json")
PROTOCOL = json.loads(PROTOCOL_FILE.read_text(encoding="utf-8"))

TECHNIQUE_SETTINGS: Dict[str, dict] = {s["name"]: s for s in PROTOCOL["technique"]["settings"]}
PRESETS: Dict[str, dict] = {p["name"]: p["settings"] for p in PROTOCOL["technique"]["presets"]}
RECOMMENDED: str = PROTOCOL["technique"]["recommended"]
JOB_FORMAT: str = PROTOCOL["job"]["format"]
JOB_VERSION: int = PROTOCOL["job"]["version"]
JOB_FIELDS: Dict[str, dict] = {f["name"]: f for f in PROTOCOL["job"]["fields"]}
CHOICES: Dict[str, object] = PROTOCOL["job"]["choices"]
EXIT_CODES: Dict[str, int] = {e["name"]: e["code"] for e in PROTOCOL["exit_codes"]}
EVENT_KEYS: Dict[str, List[str]] = {e["type"]: e["keys"] for e in PROTOCOL["events"]}


def job_default(name: str):
    """The documented default of a job field (a fresh copy: lists and objects may be changed)."""
    return json.loads(json.dumps(JOB_FIELDS[name]["default"]))


# ---------------------------------------------------------------- generated documentation

def _range(setting: dict) -> str:
    if setting["type"] == "bool":
        return "true / false"
    if setting["type"] == "choice":
        return " / ".join(f"`{c}`" for c in setting["choices"])
    low = "(" if setting.get("minimum_open") else "["
    return f"{low}{setting['minimum']:g}, {setting['maximum']:g}]"


def technique_table() -> str:
    rows = ["| setting | meaning (paper equation) | range | default |", "|---|---|---|---|"]
    for s in TECHNIQUE_SETTINGS.values():
        eq = f" ({s['equation']})" if s["equation"] else ""
        default = {"bool": str(s["default"]).lower(), "choice": f"`{s['default']}`"}.get(s["type"]) or f"{s['default']:g}"
        rows.append(f"| `{s['name']}` | {s['label']}. {s['tooltip']}{eq} | {_range(s)} | {default} |")
    return "\n".join(rows)


def _preset_defaults(settings: dict) -> str:
    """The preset's values, flags left out (its description says which terms it uses)."""
    kinds = {k: TECHNIQUE_SETTINGS[k]["type"] for k in settings}
    return ", ".join(f"{k} {v}" if kinds[k] == "choice" else f"{k} {v:g}" for k, v in settings.items()
                     if kinds[k] != "bool")


def preset_table() -> str:
    rows = ["| preset | what it changes | settings |", "|---|---|---|"]
    for p in PROTOCOL["technique"]["presets"]:
        name = f"`{p['name']}`" + (" (recommended)" if p["name"] == RECOMMENDED else "")
        rows.append(f"| {name} | {p['description']} | {_preset_defaults(p['settings'])} |")
    return "\n".join(rows)


def _default_text(field: dict) -> str:
    if field.get("required"):
        return "required"
    if field["name"] == "network":  # each network's own defaults
        return "; ".join(f"`{json.dumps({'name': name, **d})}`" for name, d in CHOICES["network"].items())
    return "see meaning" if field["default"] is None else f"`{json.dumps(field['default'])}`"


def job_table() -> str:
    rows = ["| key | meaning | default |", "|---|---|---|"]
    rows += [f"| `{f['name']}` | {f['meaning']} | {_default_text(f)} |" for f in JOB_FIELDS.values()]
    return "\n".join(rows)


def exit_code_table() -> str:
    rows = ["| code | meaning | `done.status` |", "|---|---|---|"]
    for e in PROTOCOL["exit_codes"]:
        status = f"`{e['status']}`" if e["status"] else "(no events)"
        rows.append(f"| {e['code']} | {e['meaning']} | {status} |")
    return "\n".join(rows)


def event_table() -> str:
    rows = ["| type | keys |", "|---|---|"]
    rows += [f"| `{e['type']}` | {e['meaning']} |" for e in PROTOCOL["events"]]
    return "\n".join(rows)


def exit_code_summary() -> str:
    """One line for ``--help`` epilogues."""
    return ", ".join(f"{e['code']} {e['meaning'].split(' (')[0]}" for e in PROTOCOL["exit_codes"])


TABLES = {"technique-settings": technique_table, "presets": preset_table, "job-fields": job_table,
          "exit-codes": exit_code_table, "events": event_table}
DOCS = ("README.md", "docs/protocol.md")
_BLOCK = re.compile(r"(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def render_generated(text: str) -> str:
    """``text`` with every ``<!-- generated: NAME -->`` block replaced by the current table NAME."""
    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in TABLES:
            raise KeyError(f"unknown generated block '{name}'; known: {', '.join(TABLES)}")
        return match.group(1) + TABLES[name]() + "\n" + match.group(4)
    return _BLOCK.sub(replace, text)


def stale_docs(root: Path) -> List[str]:
    """The documents under ``root`` whose generated tables differ from protocol.json."""
    return [name for name in DOCS if (root / name).is_file()
            and render_generated((root / name).read_text(encoding="utf-8")) != (root / name).read_text(encoding="utf-8")]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m AsymSegTrainer.protocol", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root holding README.md and docs/ (default: beside the package)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-docs", action="store_true", help="regenerate the tables in README.md and docs/protocol.md")
    action.add_argument("--check-docs", action="store_true", help="exit 1 when a generated table is out of date")
    args = parser.parse_args(argv)
    stale = stale_docs(args.root)
    if args.check_docs:
        for name in stale:
            print(f"{name}: generated tables are out of date; run python -m AsymSegTrainer.protocol --write-docs",
                  file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        path = args.root / name
        path.write_text(render_generated(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
