"""Fleet mode: hosts sharing one PostgreSQL."""
