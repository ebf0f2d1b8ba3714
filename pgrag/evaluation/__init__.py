"""Quality measurement: retrieval (BEIR layout) and answers (SQuAD-style scoring)."""
