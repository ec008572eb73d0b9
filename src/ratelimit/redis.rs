//! The shared rate limiter: every instance asks Redis, so N instances
//! enforce one limit between them.
//!
//! - The GCRA of `MemoryLimiter` runs inside Redis as functions of one
//!   library with a versioned name (`mume_ratelimit_v2`: `mume_admit_v2`,
//!   `mume_charge_v2`, `mume_renew_v2`), each one atomic, each reading the
//!   clock with Redis `TIME`, so instance clocks never matter. TATs are
//!   microseconds; a token charge takes its cost as an argument.
//! - Concurrent requests hold leases: members of a sorted set scored by
//!   their expiry. A lease lives `LEASE_TTL` and is renewed while its
//!   request runs; a crashed instance's leases lapse on their own.
//! - If Redis does not answer within `REDIS_TIMEOUT`, the limiter fails
//!   open to an in-process `MemoryLimiter` at each limit ÷ the configured
//!   instance count, says so in the log and in `/health`, and probes Redis
//!   every second, going back to it as soon as it answers (RL-03). It never
//!   turns a Redis failure into a 500.

use std::mem::take;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use tokio::sync::RwLock;

use super::{
    KeyLimits, LimitKind, LimitStatus, LimiterHealth, MemoryLimiter, Permit, Quota, RateLimiter,
    Refusal,
};

/// The Lua library: loaded (replacing any older copy) at connect and after
/// every reconnect.
const LIBRARY: &str = r#"#!lua name=mume_ratelimit_v2
local WINDOW = 60000000

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function tat_of(key)
  return tonumber(redis.call('GET', key) or '0')
end

local function store_tat(key, tat, now)
  redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end

-- What is left of a limit whose TAT is `tat`, and when it is whole (ms).
local function quota(tat, limit, now)
  local used = math.max(tat - now, 0)
  local free = math.max(WINDOW - used, 0)
  return math.floor(free * limit / WINDOW), math.ceil(used / 1000)
end

-- KEYS: requests TAT, tokens TAT, leases. ARGV: rpm, tpm, max_tokens,
-- max_concurrent (0 = none), lease id, lease ms.
-- Returns {admitted, kind, retry_ms, req_remaining, req_reset_ms,
--          tok_remaining, tok_reset_ms}; -1 remaining = no such limit.
local function admit(keys, args)
  local rpm, tpm = tonumber(args[1]), tonumber(args[2])
  local max_tokens, max_conc = tonumber(args[3]), tonumber(args[4])
  local lease, lease_ms = args[5], tonumber(args[6])
  local now = now_us()
  local req_rem, req_reset, tok_rem, tok_reset = -1, 0, -1, 0
  if tpm > 0 then
    local tat = tat_of(keys[2])
    tok_rem, tok_reset = quota(tat, tpm, now)
    if max_tokens > tpm then
      return {0, 'tokens_too_large', 60000, req_rem, req_reset, tok_rem, tok_reset}
    end
    local debt = tat - now - WINDOW
    if debt > 0 then
      return {0, 'tokens', math.ceil(debt / 1000), req_rem, req_reset, tok_rem, tok_reset}
    end
  end
  -- Concurrency before rpm: a request refused for concurrency must not
  -- use up one of the minute's requests.
  local old = 0
  if rpm > 0 then
    old = tat_of(keys[1])
    req_rem, req_reset = quota(old, rpm, now)
  end
  if max_conc > 0 then
    redis.call('ZREMRANGEBYSCORE', keys[3], '-inf', now)
    if redis.call('ZCARD', keys[3]) >= max_conc then
      return {0, 'concurrency', 1000, req_rem, req_reset, tok_rem, tok_reset}
    end
  end
  if rpm > 0 then
    local tat = math.max(old, now) + math.floor(WINDOW / rpm)
    if tat - now > WINDOW then
      return {0, 'requests', math.ceil((tat - now - WINDOW) / 1000), req_rem, req_reset, tok_rem, tok_reset}
    end
    store_tat(keys[1], tat, now)
    req_rem, req_reset = quota(tat, rpm, now)
  end
  if max_conc > 0 then
    redis.call('ZADD', keys[3], now + lease_ms * 1000, lease)
    redis.call('PEXPIRE', keys[3], lease_ms + 1000)
  end
  return {1, 'ok', 0, req_rem, req_reset, tok_rem, tok_reset}
end

-- KEYS: tokens TAT. ARGV: tpm, tokens used. Debt is allowed.
local function charge(keys, args)
  local tpm, cost = tonumber(args[1]), tonumber(args[2])
  local now = now_us()
  local tat = math.max(tat_of(keys[1]), now) + math.floor(WINDOW * cost / tpm)
  store_tat(keys[1], tat, now)
  return 1
end

-- KEYS: leases. ARGV: lease id, lease ms. Extends a lease still held.
local function renew(keys, args)
  local now = now_us()
  redis.call('ZADD', keys[1], 'XX', now + tonumber(args[2]) * 1000, args[1])
  redis.call('PEXPIRE', keys[1], tonumber(args[2]) + 1000)
  return 1
end

redis.register_function('mume_admit_v2', admit)
redis.register_function('mume_charge_v2', charge)
redis.register_function('mume_renew_v2', renew)
"#;

/// Longest wait for Redis before failing open.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How often an unreachable Redis is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A lease's life; renewed every third of it while the request runs.
const LEASE_TTL: Duration = Duration::from_secs(30);

type RedisReply = (i64, String, i64, i64, i64, i64, i64);
/// The connection, absent until Redis first answers.
type SharedConn = Arc<RwLock<Option<ConnectionManager>>>;

pub struct RedisLimiter {
    client: redis::Client,
    conn: SharedConn,
    /// Key prefix (`rate_limit.key_prefix`, default `mume:rl:`); tests give
    /// each run its own.
    prefix: String,
    instances: u32,
    fallback: MemoryLimiter,
    degraded: Arc<AtomicBool>,
}

impl RedisLimiter {
    /// Connects to `url`. An unreachable Redis is not an error: the limiter
    /// starts in fallback and switches to Redis once it answers.
    pub async fn start(url: &str, prefix: &str, instances: u32) -> Result<Arc<Self>, String> {
        crate::install_tls_provider();
        let client =
            redis::Client::open(url).map_err(|e| format!("rate_limit.url is not usable: {e}"))?;
        let limiter = Arc::new(Self {
            client,
            conn: Arc::default(),
            prefix: prefix.to_string(),
            instances: instances.max(1),
            fallback: MemoryLimiter::default(),
            degraded: Arc::new(AtomicBool::new(true)),
        });
        if let Err(e) = limiter.reconnect().await {
            tracing::warn!(error = %e, instances = limiter.instances, "Redis is unreachable: rate limits are enforced in-process at limit ÷ instances until it answers");
        }
        let probe = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(limiter) = probe.upgrade() else {
                    return;
                };
                if limiter.degraded.load(Ordering::Acquire) {
                    let _ = limiter.reconnect().await;
                }
            }
        });
        Ok(limiter)
    }

    /// Opens a connection, loads the library, and leaves fallback.
    async fn reconnect(&self) -> Result<(), String> {
        let connect = async {
            let mut conn = ConnectionManager::new(self.client.clone()).await?;
            redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(LIBRARY)
                .query_async::<String>(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let conn = tokio::time::timeout(REDIS_TIMEOUT * 4, connect)
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        *self.conn.write().await = Some(conn);
        if self.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!("Redis answers again: rate limits are shared across instances");
        }
        Ok(())
    }

    fn fail_open(&self, error: &str) {
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error,
                instances = self.instances,
                "Redis is unreachable: rate limits fall back to in-process at limit ÷ instances"
            );
        }
    }

    fn key(&self, key_id: &str, what: &str) -> String {
        // The hash tag keeps a key's three entries on one cluster slot.
        format!("{}{{{key_id}}}:{what}", self.prefix)
    }

    /// One function call, within `REDIS_TIMEOUT`; a missing library (a
    /// restarted Redis keeps no functions) is loaded and the call retried.
    async fn call<T: redis::FromRedisValue>(
        &self,
        function: &str,
        keys: &[String],
        args: &[String],
    ) -> Result<T, String> {
        let Some(mut conn) = self.conn.read().await.clone() else {
            return Err("not connected".into());
        };
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(keys.len()).arg(keys).arg(args);
        let first = tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut conn)).await;
        match first {
            Err(_) => Err("timed out".into()),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.to_string().contains("Function not found") => {
                let mut load = redis::cmd("FUNCTION");
                load.arg("LOAD").arg("REPLACE").arg(LIBRARY);
                tokio::time::timeout(REDIS_TIMEOUT, load.query_async::<String>(&mut conn))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut conn))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    /// The limits the in-process fallback enforces: each ÷ instances.
    fn shares(&self, limits: KeyLimits) -> KeyLimits {
        let share = |l: Option<u32>| l.map(|l| (l / self.instances).max(1));
        KeyLimits {
            rpm: share(limits.rpm),
            tpm: share(limits.tpm),
            max_concurrent: share(limits.max_concurrent),
        }
    }

    async fn admit_shared(
        &self,
        key_id: &str,
        limits: KeyLimits,
        max_tokens: Option<u64>,
    ) -> Result<Result<(Permit, LimitStatus), Refusal>, String> {
        let lease_id = ulid::Ulid::new().to_string();
        let leases = self.key(key_id, "leases");
        let keys = [
            self.key(key_id, "requests"),
            self.key(key_id, "tokens"),
            leases.clone(),
        ];
        let n = |v: Option<u32>| v.map_or("0".to_string(), |v| v.to_string());
        let args = [
            n(limits.rpm),
            n(limits.tpm),
            max_tokens.unwrap_or(0).to_string(),
            n(limits.max_concurrent),
            lease_id.clone(),
            LEASE_TTL.as_millis().to_string(),
        ];
        let release = limits.max_concurrent.map(|_| Release {
            conn: self.conn.clone(),
            key: leases,
            member: lease_id,
        });
        let (admitted, kind, retry_ms, req_rem, req_reset, tok_rem, tok_reset): RedisReply =
            self.call("mume_admit_v2", &keys, &args).await?;
        let quota = |limit: Option<u32>, remaining: i64, reset: i64| {
            limit.filter(|_| remaining >= 0).map(|limit| Quota {
                limit,
                remaining: remaining as u64,
                reset: Duration::from_millis(reset.max(0) as u64),
            })
        };
        let status = LimitStatus {
            requests: quota(limits.rpm, req_rem, req_reset),
            tokens: quota(limits.tpm, tok_rem, tok_reset),
        };
        if admitted == 1 {
            let permit = match release {
                None => Permit::none(),
                Some(release) => Permit::leased(Box::new(Lease::hold(release))),
            };
            return Ok(Ok((permit, status)));
        }
        let (kind, limit) = match kind.as_str() {
            "tokens_too_large" => (
                LimitKind::TokensTooLarge {
                    max_tokens: max_tokens.unwrap_or(0),
                },
                limits.tpm,
            ),
            "tokens" => (LimitKind::Tokens, limits.tpm),
            "requests" => (LimitKind::Requests, limits.rpm),
            _ => (LimitKind::Concurrency, limits.max_concurrent),
        };
        Ok(Err(Refusal {
            kind,
            limit: limit.unwrap_or(0),
            retry_after: Duration::from_millis(retry_ms.max(1) as u64),
            status,
        }))
    }
}

/// A concurrency lease: renewed while held, removed when dropped.
struct Lease {
    renewer: tokio::task::JoinHandle<()>,
    _release: Release,
}

/// Removes a lease from its set when dropped. Made before the admit call
/// that may add the lease, so that a call that times out, or whose request
/// goes away, after Redis ran it leaves no lease holding a slot for
/// `LEASE_TTL`; removing one that was never added is harmless.
struct Release {
    /// The connection, the leases key and the lease's id.
    conn: SharedConn,
    key: String,
    member: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.conn.clone();
        let (key, member) = (take(&mut self.key), take(&mut self.member));
        runtime.spawn(async move {
            let Some(mut c) = conn.read().await.clone() else {
                return;
            };
            let mut remove = redis::cmd("ZREM");
            remove.arg(&key).arg(&member);
            // If this fails the lease lapses by itself within LEASE_TTL.
            let _ = tokio::time::timeout(REDIS_TIMEOUT, remove.query_async::<i64>(&mut c)).await;
        });
    }
}

impl Lease {
    fn hold(release: Release) -> Self {
        let conn = release.conn.clone();
        let (key, member) = (release.key.clone(), release.member.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                let Some(mut c) = conn.read().await.clone() else {
                    continue;
                };
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("mume_renew_v2")
                    .arg(1)
                    .arg(&key)
                    .arg(&member)
                    .arg(LEASE_TTL.as_millis() as u64);
                let _ = tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<i64>(&mut c)).await;
            }
        });
        Self {
            renewer,
            _release: release,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Then `_release` removes the lease.
        self.renewer.abort();
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn admit(
        &self,
        key_id: &str,
        limits: KeyLimits,
        max_tokens: Option<u64>,
    ) -> Result<(Permit, LimitStatus), Refusal> {
        if limits == KeyLimits::default() {
            return Ok((Permit::none(), LimitStatus::default()));
        }
        if !self.degraded.load(Ordering::Acquire) {
            match self.admit_shared(key_id, limits, max_tokens).await {
                Ok(decision) => return decision,
                Err(e) => self.fail_open(&e),
            }
        }
        // Whether max_tokens can ever pass is the key's own budget's to
        // say, not its share's: a request refused for that is told never
        // to retry.
        if let (Some(tpm), Some(max_tokens)) = (limits.tpm, max_tokens) {
            if max_tokens > u64::from(tpm) {
                return Err(Refusal {
                    kind: LimitKind::TokensTooLarge { max_tokens },
                    limit: tpm,
                    retry_after: super::WINDOW,
                    status: LimitStatus::default(),
                });
            }
        }
        self.fallback.admit(key_id, self.shares(limits), None).await
    }

    async fn charge_tokens(&self, key_id: &str, limits: KeyLimits, tokens: u64) {
        let Some(tpm) = limits.tpm else { return };
        if !self.degraded.load(Ordering::Acquire) {
            let keys = [self.key(key_id, "tokens")];
            let args = [tpm.to_string(), tokens.to_string()];
            match self.call::<i64>("mume_charge_v2", &keys, &args).await {
                Ok(_) => return,
                Err(e) => self.fail_open(&e),
            }
        }
        self.fallback
            .charge_tokens(key_id, self.shares(limits), tokens)
            .await
    }

    fn health(&self) -> LimiterHealth {
        if self.degraded.load(Ordering::Acquire) {
            LimiterHealth::Fallback {
                instances: self.instances,
            }
        } else {
            LimiterHealth::Redis
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `rediss://` URL (a managed Redis) is usable: the client takes it,
    /// and the first connection builds its TLS config (which needs a
    /// default crypto provider, or rustls panics) before it finds nothing
    /// listening, so the limiter starts in fallback.
    #[tokio::test]
    async fn a_rediss_url_starts_the_limiter_over_tls() {
        redis::Client::open("rediss://127.0.0.1:1").expect("TLS is built in");
        let limiter = RedisLimiter::start("rediss://127.0.0.1:1", "t:", 2)
            .await
            .expect("a rediss:// URL is usable");
        assert!(matches!(
            limiter.health(),
            LimiterHealth::Fallback { instances: 2 }
        ));
    }
}
