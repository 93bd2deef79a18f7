"""Data movement plugins: each moves one file and says what happened."""
