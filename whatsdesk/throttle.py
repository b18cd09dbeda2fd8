"""Login throttling: after repeated failures an account (or an address) waits a while."""

from __future__ import annotations

import hashlib

from redis import Redis

FAILURES_PER_ACCOUNT = 5
FAILURES_PER_ADDRESS = 20
WINDOW_SECONDS = 15 * 60


class LoginThrottle:
    """Counts failed logins per email and per client address in Redis for 15 minutes."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis = redis
        self.namespace = namespace

    def _keys(self, email: str, address: str) -> list[tuple[str, int]]:
        # Hashed: the keys never hold the email in clear.
        who = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return [
            (f"whatsdesk:login:{self.namespace}:account:{who}", FAILURES_PER_ACCOUNT),
            (f"whatsdesk:login:{self.namespace}:address:{address}", FAILURES_PER_ADDRESS),
        ]

    def wait_seconds(self, email: str, address: str) -> int:
        """0 when a login may be tried now; else how long until it may."""
        waits = [0]
        for key, limit in self._keys(email, address):
            if int(self.redis.get(key) or 0) >= limit:
                waits.append(max(1, int(self.redis.ttl(key))))
        return max(waits)

    def failed(self, email: str, address: str) -> None:
        pipe = self.redis.pipeline()
        for key, _limit in self._keys(email, address):
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS, nx=True)
        pipe.execute()

    def succeeded(self, email: str, address: str) -> None:
        self.redis.delete(self._keys(email, address)[0][0])
