"""Scale-out on Ray (the ``ray`` extra): batch scoring over a cluster on Ray Data (``batch.py``) and
service replicas on Ray Serve (``serve_app.py``). Nothing else in the library imports this room, so
the core install never imports Ray."""
