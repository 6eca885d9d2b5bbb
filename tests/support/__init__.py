"""Helpers shared by the test suites: child processes (started, watched, always ended), readiness
waits that tolerate a server not listening yet, and what /proc says about a process."""
