"""Milvus as the store of an index's windows (`--milvus URI --collection NAME`), beside the local index folder:
the same verbs, for libraries past one machine. `pymilvus` talks to Milvus Distributed (`http://host:19530`)
and to Milvus Lite (a local `.db` file) with the same API; it is the `[milvus]` extra."""
