"""End-to-end tests: realistic models compiled, exported, loaded in a fresh process, run."""
