"""AsymSeg module library: Qt-free logic (export, job spec, engine process, import) and the Qt panel.

Every file but ``Widget.py`` imports under slicer-core without Qt; none imports torch, MONAI
or the engine (AsymSegTrainer runs as a child process, docs/protocol.md). Submodules are
imported explicitly (``from AsymSegLib.Logic import ...``): nothing is imported here.
"""
