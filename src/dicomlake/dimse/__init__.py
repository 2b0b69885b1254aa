"""The DIMSE listener of `dicomlake serve`: associations from modalities and PACS in, calls on `store/` out
(C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, Storage Commitment)."""
