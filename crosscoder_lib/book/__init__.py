"""Book support: the chapters' results files, presets and cost model, and the reproduction table."""
