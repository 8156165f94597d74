"""The admin plane: one registry of admin commands, served on the local control socket and on /admin/*."""
