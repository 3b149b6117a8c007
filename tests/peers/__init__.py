"""Real peers for the tests (sshd, vCenter simulator, WS-Man server, RT, PostgreSQL...), one module each."""
