"""The worlds the book runs in: text corpora, tokenizers and the shipped models."""
