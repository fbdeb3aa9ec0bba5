"""The parent side: the serve loop, the listening sockets, the forking and threading mix-ins,
reaping of children.  (The prefork pool manager and signal handling will live here too.)"""
