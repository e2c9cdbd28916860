//! `eic-connect audit [TARGET]`: EC2 Instance Connect events from
//! CloudTrail — who pushed a key to or opened a tunnel towards which
//! instance, from where, when, and whether it worked.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
use aws_sdk_ec2::types::Filter;
use aws_smithy_types::DateTime;

use crate::audit::{self, Event, Holder, Mapping, Outer, Query, Selected, Selection, time};
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::errors::{Attempt, from_sdk};
use crate::aws::{self, Clients};
use crate::error::{Failure, fail};
use crate::fleet;
use crate::progress::Line;
use crate::sanitize::terminal_safe;
use crate::settings::Admin;
use crate::target::is_instance_id;

/// CloudTrail answers about 2 LookupEvents a second per account and
/// region: calls go out at least this far apart (a little over 500 ms, so
/// that network jitter never brings two closer than that at the service).
const PACE: Duration = Duration::from_millis(520);
/// The most events one LookupEvents call returns.
const PAGE_SIZE: i32 = 50;
/// Most values in one EC2 filter.
const FILTER_VALUES: usize = 200;

pub async fn run(settings: Admin<Query>) -> anyhow::Result<ExitCode> {
    let query = settings.args;
    let config = aws::load_config(&settings.aws).await?;
    let clients = Clients::new(&config, &settings.aws);
    let mut progress = if std::io::stderr().is_terminal() {
        Line::stderr()
    } else {
        Line::silent()
    };
    let selected = select(&clients, &query.selection, &mut progress).await?;
    let (found, more) = lookup(&clients, &query, selected.as_ref(), &mut progress).await?;
    let addresses: Vec<IpAddr> = found
        .iter()
        .filter(|e| e.instance_id.is_none())
        .filter_map(Event::address)
        .collect();
    let holders = if addresses.is_empty() {
        Vec::new()
    } else {
        progress.show("mapping tunnel addresses to instances…");
        holders(&clients, &addresses).await?
    };
    progress.clear();
    let events: Vec<(Event, Mapping)> = found
        .into_iter()
        .map(|e| {
            let mapping = audit::map_event(&e, &holders);
            (e, mapping)
        })
        .collect();
    let range = format!(
        "{} – {}",
        time::format(query.since),
        time::format(query.until)
    );
    if query.json {
        let doc = serde_json::json!({
            "region": clients.scope.region,
            "since": time::format(query.since),
            "until": time::format(query.until),
            "truncated": more,
            "events": events.iter().map(|(e, m)| audit::event_json(e, m)).collect::<Vec<_>>(),
        });
        crate::error::print_stdout(&(fleet::json_text(&doc) + "\n"))?;
    } else if !events.is_empty() {
        let rows: Vec<Vec<String>> = events.iter().map(|(e, m)| audit::row(e, m)).collect();
        let text = if std::io::stdout().is_terminal() {
            crate::table::render(&audit::HEADER, &rows, Some((2, audit::PRINCIPAL_WIDTH)))
        } else {
            rows.iter().map(|r| r.join("\t") + "\n").collect()
        };
        crate::error::print_stdout(&text)?;
        for note in audit::notes(&events) {
            eprintln!("eic-connect: {note}");
        }
    }
    if events.is_empty() {
        let what = match &query.selection {
            Selection::All => String::new(),
            Selection::Target(target) => format!(" for {target}"),
            Selection::Filters(filters) => format!(" for {}", fleet::describe(filters)),
        };
        eprintln!(
            "eic-connect: no EC2 Instance Connect events{what} in {range} ({})",
            clients.scope.describe()
        );
    } else if more {
        eprintln!(
            "eic-connect: showing the newest {} events; there may be more in {range}: raise --limit or narrow --since",
            query.limit
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The instances the user named: their ids and addresses, before any
/// CloudTrail call (an unknown target stops here).
async fn select(
    clients: &Clients,
    selection: &Selection,
    progress: &mut Line,
) -> anyhow::Result<Option<Selected>> {
    let instances: Vec<InstanceInfo> = match selection {
        Selection::All => return Ok(None),
        Selection::Target(target) => {
            progress.show(&format!("looking up {target}…"));
            let found = ec2::find(clients, target).await?;
            if found.is_empty() {
                // Says "no instance matches …" with its hints.
                let one = ec2::exactly_one(found, target, &clients.scope)?;
                return Ok(Some(selected(&[one])));
            }
            found
        }
        Selection::Filters(filters) => {
            progress.show("looking up instances…");
            let found = ec2::list(clients, filters.clone()).await?;
            if found.is_empty() {
                progress.clear();
                return fail(
                    Failure::new(format!(
                        "no instance matches {} ({})",
                        fleet::describe(filters),
                        clients.scope.describe()
                    ))
                    .hint("check the filters with: eic-connect list FILTER…")
                    .hint("to see every instance's events, give no target and no filter"),
                );
            }
            found
        }
    };
    Ok(Some(selected(&instances)))
}

/// The ids and private addresses of `instances`.
fn selected(instances: &[InstanceInfo]) -> Selected {
    let mut selected = Selected::default();
    for i in instances {
        selected.ids.insert(i.id.clone());
        selected
            .addresses
            .extend(i.addresses.private_ip.map(IpAddr::V4));
        selected
            .addresses
            .extend(i.addresses.ipv6.iter().copied().map(IpAddr::V6));
    }
    selected
}

/// Every event in the range that passes the filters, newest first, up to
/// the limit; and whether more may exist. LookupEvents calls are paced.
async fn lookup(
    clients: &Clients,
    query: &Query,
    selected: Option<&Selected>,
    progress: &mut Line,
) -> anyhow::Result<(Vec<Event>, bool)> {
    let at = Attempt {
        op: "LookupEvents",
        scope: &clients.scope,
        instance_id: None,
        os_user: None,
    };
    let attribute = LookupAttribute::builder()
        .attribute_key(LookupAttributeKey::EventSource)
        .attribute_value(audit::EVENT_SOURCE)
        .build()?;
    let trail = clients.cloudtrail();
    let mut found: Vec<Event> = Vec::new();
    let mut token: Option<String> = None;
    let mut last_call: Option<Instant> = None;
    let mut pages = 0usize;
    let mut read = 0usize;
    progress.show("reading CloudTrail…");
    loop {
        if let Some(last) = last_call {
            tokio::time::sleep(PACE.saturating_sub(last.elapsed())).await;
        }
        last_call = Some(Instant::now());
        let out = trail
            .lookup_events()
            .lookup_attributes(attribute.clone())
            .start_time(DateTime::from_secs(query.since))
            .end_time(DateTime::from_secs(query.until))
            .max_results(PAGE_SIZE)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|err| {
                progress.clear();
                from_sdk(err, &at)
            })?;
        pages += 1;
        for e in out.events() {
            read += 1;
            let outer = Outer {
                event_id: e.event_id().map(str::to_owned),
                event_name: e.event_name().map(str::to_owned),
                event_time: e.event_time().map(DateTime::secs),
                username: e.username().map(str::to_owned),
            };
            let event = audit::parse_event(&outer, e.cloud_trail_event());
            if !audit::keep(&event, query, selected) {
                continue;
            }
            if found.len() == query.limit {
                return Ok((found, true));
            }
            found.push(event);
        }
        let plural = |n: usize, word: &str| match n {
            1 => format!("1 {word}"),
            n => format!("{n} {word}s"),
        };
        progress.show(&format!(
            "reading CloudTrail: {}, {}, {} shown",
            plural(pages, "page"),
            plural(read, "event"),
            found.len()
        ));
        let next = out
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        match next {
            // A service that hands back the same token would page forever.
            Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
            Some(_) | None => return Ok((found, false)),
        }
        if found.len() == query.limit {
            return Ok((found, true));
        }
    }
}

/// The instances that hold the tunnels' addresses now: one DescribeInstances
/// call per address family (and per 200 addresses).
async fn holders(clients: &Clients, addresses: &[IpAddr]) -> anyhow::Result<Vec<Holder>> {
    let at = Attempt {
        op: "DescribeInstances",
        scope: &clients.scope,
        instance_id: None,
        os_user: None,
    };
    let mut v4: Vec<String> = Vec::new();
    let mut v6: Vec<String> = Vec::new();
    for ip in addresses {
        let list = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        let text = ip.to_string();
        if !list.contains(&text) {
            list.push(text);
        }
    }
    let mut holders: Vec<Holder> = Vec::new();
    let sets = [
        ("private-ip-address", v4),
        ("network-interface.ipv6-addresses.ipv6-address", v6),
    ];
    for (name, values) in sets {
        for chunk in values.chunks(FILTER_VALUES) {
            let filter = Filter::builder()
                .name(name)
                .set_values(Some(chunk.to_vec()))
                .build();
            let mut pages = clients
                .ec2
                .describe_instances()
                .filters(filter)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|err| from_sdk(err, &at))?;
                for inst in page.reservations().iter().flat_map(|r| r.instances()) {
                    if let Some(holder) = holder(inst)
                        && !holders.iter().any(|h| h.id == holder.id)
                    {
                        holders.push(holder);
                    }
                }
            }
        }
    }
    Ok(holders)
}

/// An instance's id, launch time and every private address it holds.
fn holder(inst: &aws_sdk_ec2::types::Instance) -> Option<Holder> {
    let id = inst.instance_id().filter(|id| is_instance_id(id))?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    let mut add = |text: Option<&str>| {
        if let Some(ip) = text.and_then(|t| t.parse::<IpAddr>().ok())
            && !addresses.contains(&ip)
        {
            addresses.push(ip);
        }
    };
    add(inst.private_ip_address());
    add(inst.ipv6_address());
    for ni in inst.network_interfaces() {
        add(ni.private_ip_address());
        for a in ni.private_ip_addresses() {
            add(a.private_ip_address());
        }
        for a in ni.ipv6_addresses() {
            add(a.ipv6_address());
        }
    }
    Some(Holder {
        id: terminal_safe(id).into_owned(),
        launch_time: inst.launch_time().map(DateTime::secs),
        addresses,
    })
}
