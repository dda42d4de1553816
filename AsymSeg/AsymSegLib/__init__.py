"""AsymSeg module library: Qt-free logic (export, job spec, engine process, import) and the Qt panel.

The panel files (``Widget.py`` and the ``*Section.py``, ``QtUtils.py``, ``TaskPoller.py`` it uses) need Qt;
every other file imports under slicer-core without it. None imports torch, MONAI
or the engine (AsymSegTrainer runs as a child process, docs/protocol.md). Submodules are
imported explicitly (``from AsymSegLib.Logic import ...``): nothing is imported here.
"""
