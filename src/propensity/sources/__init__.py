"""Source systems a shop keeps: the OLTP database, the clickstream landing area and CSV drops.

The simulator and importers write here; collection reads from here. Nothing downstream
of collection touches a source directly.
"""
