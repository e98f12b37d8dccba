"""The store shared by replicas ([server.store] redis_url): the only code that imports redis.

`connection.py` builds the client from the settings and translates its errors (StoreUnavailable)."""
