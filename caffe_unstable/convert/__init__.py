"""Conversions between model formats and fixed-point tables (cu-convert, cu-quantize)."""
