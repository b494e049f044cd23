"""Parameter reallocation between a role's parallel layouts.

``plan`` is pure and torch-free (the operator's cost model imports it);
``execute`` moves the bytes with torch.distributed and is imported explicitly.
"""
