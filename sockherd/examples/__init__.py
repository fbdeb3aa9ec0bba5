"""Small services that `make run` and the tests serve with sockherd."""
