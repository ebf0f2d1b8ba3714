"""The models: where their weights come from, the embedder and the cross-encoder."""
