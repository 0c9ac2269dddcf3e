"""Built-in prompt sets (package data), prompt loaders and prompt formats."""
