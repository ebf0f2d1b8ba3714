"""Question answering: recall (dense, lexical, fused), rerank, generate, stream."""
