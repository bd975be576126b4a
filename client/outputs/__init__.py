"""Stage 4, outputs: what people read: tables, JSON and self-contained HTML pages."""
