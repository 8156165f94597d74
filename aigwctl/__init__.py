"""aigwctl: the admin shell for aigwd."""
