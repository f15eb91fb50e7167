

#: The planted attention constraints a model can carry (`models.routing`; the organism's spec reads it).
ROUTINGS = ("direct", "query_routed", "window")
