"""The write model: facts and their rules, the store, group commit, the registry, and the one SQL layer."""
