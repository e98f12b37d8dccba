"""devtenant package."""
