"""The planes between processes: discovery, the request plane, the event plane."""
