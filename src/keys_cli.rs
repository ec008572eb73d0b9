//! `mume-gateway keys …`: key management straight on the store, for
//! operators without the admin API. The rules are `Accounts`'s, the same
//! as over HTTP.

use std::fmt::Write as _;

use crate::accounts::{now_ms, Accounts, KeySpec};
use crate::cli::KeysAction;
use crate::config::{parse_usd, usd_string, Config};
use crate::http::account::period_starts;
use crate::state::open_store;
use crate::store::{CreditKind, KeyLimits, KeyPatch, KeyRecord};

/// Runs one action. `Ok` is what to print on stdout; `Err` on stderr.
pub async fn run(config: &Config, action: KeysAction) -> Result<String, String> {
    let store = open_store(&config.store, &|name| std::env::var(name).ok())
        .await
        .map_err(|e| format!("{}: {e}", config.store.path.display()))?;
    let accounts = Accounts::new(store, None);
    let fail = |e: crate::gateway::error::GatewayError| e.message;
    match action {
        KeysAction::Create {
            name,
            credits,
            rpm,
            tpm,
            max_concurrent,
            models,
        } => {
            let credits = credits
                .map(|c| parse_usd(&c).map_err(|e| format!("--credits: {e}")))
                .transpose()?;
            let spec = KeySpec {
                name,
                credits,
                limits: KeyLimits {
                    rpm,
                    tpm,
                    max_concurrent,
                },
                models,
                ..Default::default()
            };
            let (_, plain) = accounts.create_key(spec).await.map_err(fail)?;
            Ok(format!("{}\n", plain.reveal()))
        }
        KeysAction::List { offset, limit } => {
            let keys = accounts
                .store
                .keys
                .list_keys(offset, limit.clamp(1, 1000))
                .await
                .map_err(|e| e.to_string())?;
            let mut out = String::from("ID        NAME                 LABEL            BALANCE_USD   RPM     TPM       STATE\n");
            for k in &keys {
                let _ = writeln!(out, "{}", row(k));
            }
            Ok(out)
        }
        KeysAction::Disable { id } => set_disabled(&accounts, &id, true).await,
        KeysAction::Enable { id } => set_disabled(&accounts, &id, false).await,
        KeysAction::Topup { id, credits } => {
            let amount = parse_usd(&credits).map_err(|e| format!("--credits: {e}"))?;
            let balance = accounts
                .credit(&id, CreditKind::TopUp, amount, Some("cli top-up"))
                .await
                .map_err(fail)?;
            Ok(format!("{id}: balance {} USD\n", usd_string(balance)))
        }
        KeysAction::Usage { id } => {
            let key = accounts.get_key(&id).await.map_err(fail)?;
            let (day, week, month) = period_starts(now_ms());
            let usage = accounts
                .store
                .usage
                .summary(&id, day, week, month)
                .await
                .map_err(|e| e.to_string())?;
            let ledger = accounts
                .store
                .credits
                .ledger(&id)
                .await
                .map_err(|e| e.to_string())?;
            let mut out = format!(
                "key {} ({}, {})\nbalance: {}\nrequests: {}\nspent: {} USD total, {} today, {} this week, {} this month\nledger ({} rows, newest last):\n",
                key.id,
                key.name,
                key.display,
                key.balance.map_or("unlimited".to_string(), |b| format!("{} USD", usd_string(b))),
                usage.requests,
                usd_string(usage.total),
                usd_string(usage.since_day),
                usd_string(usage.since_week),
                usd_string(usage.since_month),
                ledger.len(),
            );
            for l in ledger.iter().rev().take(20).rev() {
                let _ = writeln!(
                    out,
                    "  #{:<6} {:<8} {:>16} cost {:>14}  {}",
                    l.seq,
                    l.kind,
                    usd_string(l.amount),
                    usd_string(l.cost),
                    l.request_id.as_deref().or(l.note.as_deref()).unwrap_or("")
                );
            }
            Ok(out)
        }
    }
}

async fn set_disabled(accounts: &Accounts, id: &str, disabled: bool) -> Result<String, String> {
    let patch = KeyPatch {
        disabled: Some(disabled),
        ..Default::default()
    };
    let key = accounts
        .update_key(id, patch)
        .await
        .map_err(|e| e.message)?;
    Ok(format!(
        "{}: {}\n",
        key.id,
        if key.disabled { "disabled" } else { "enabled" }
    ))
}

fn row(k: &KeyRecord) -> String {
    let limit = |l: Option<u32>| l.map_or("-".to_string(), |n| n.to_string());
    format!(
        "{:<9} {:<20} {:<16} {:>12}  {:<7} {:<9} {}",
        k.id,
        k.name.chars().take(20).collect::<String>(),
        k.display,
        k.balance.map_or("unlimited".into(), usd_string),
        limit(k.limits.rpm),
        limit(k.limits.tpm),
        if k.disabled { "disabled" } else { "active" }
    )
}
