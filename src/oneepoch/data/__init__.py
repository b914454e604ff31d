"""Corpus ingestion, tokenizers, token shards and the dataset the trainer reads."""
