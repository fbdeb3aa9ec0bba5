"""The child side: what runs a request (handlers now; the prefork worker loop later)."""
