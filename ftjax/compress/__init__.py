"""Compression after fine-tuning: distillation, pruning, quantisation."""
