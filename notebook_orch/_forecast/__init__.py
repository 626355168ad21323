"""The forecast's private rooms: what past runs measured (`history`), per-task figures (`estimate`), display (`show`)."""
