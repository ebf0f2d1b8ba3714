"""What PostgreSQL holds and how it is indexed: the ORM schema, collections, the lexical
(BM25) index and its analyzer, the HNSW index, metadata filters."""
