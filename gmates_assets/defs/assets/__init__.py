"""Every gmates asset, declared once (see declare.py), in pipeline order."""
from . import influence, pool, release, selection, training

DECLARATIONS = [*pool.DECLS, *influence.DECLS, *selection.DECLS, *training.DECLS, *release.DECLS]
