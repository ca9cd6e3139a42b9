"""Mechanisms every command shares: atomic writes (``atomic``), output ownership (``ownership``)
and guarded artifact readers (``guarded``). No stage imports from here; stages import these."""
