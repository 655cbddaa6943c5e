"""Task families built from outside sources (fonts, image folders) for the CLI and the service."""
