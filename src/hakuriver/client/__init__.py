"""The user's command line: submit, wait, status, kill, list nodes."""
