"""Point-in-time features, profile tags and labels per snapshot."""
