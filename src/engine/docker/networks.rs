//! Networks (the secrets server's build network) and what builds left
//! behind, found by label.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{ContainerSummaryStateEnum, Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::ListNetworksOptions;

use super::{api, is_not_found, DockerEngine};
use crate::engine::{EngineError, Leftover};

/// Creates a bridge network and returns its gateway; a network without one is
/// removed again.
pub(super) async fn create_network(
    engine: &DockerEngine,
    name: &str,
    labels: &BTreeMap<String, String>,
    subnet: Option<&str>,
) -> Result<String, EngineError> {
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".to_string()),
        labels: Some(labels.clone().into_iter().collect()),
        // The first address of the subnet is the gateway, as Docker
        // would choose; given explicitly, it shows in the IPAM config.
        ipam: subnet.map(|subnet| Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.to_string()),
                gateway: crate::netpool::Net::parse(subnet)
                    .ok()
                    .map(|net| std::net::Ipv4Addr::from(net.addr + 1).to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    engine.docker.create_network(request).await.map_err(api)?;
    let inspected = engine.docker.inspect_network(name, None).await;
    let gateway = inspected.as_ref().ok().and_then(|n| {
        n.ipam
            .as_ref()?
            .config
            .as_ref()?
            .iter()
            .find_map(|c| c.gateway.clone().filter(|g| !g.is_empty()))
    });
    match (inspected, gateway) {
        (_, Some(gateway)) => Ok(gateway),
        (Err(err), None) => {
            let _ = engine.docker.remove_network(name).await;
            Err(api(err))
        }
        (Ok(_), None) => {
            let _ = engine.docker.remove_network(name).await;
            Err(EngineError::Api(format!(
                "network `{name}` has no gateway in its IPAM config"
            )))
        }
    }
}

/// The IPv4 subnets of every network the daemon has.
pub(super) async fn network_subnets(engine: &DockerEngine) -> Result<Vec<String>, EngineError> {
    let networks = engine
        .docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .map_err(api)?;
    Ok(networks
        .into_iter()
        .filter_map(|n| n.ipam?.config)
        .flatten()
        .filter_map(|c| c.subnet)
        .collect())
}

/// Networks and containers that carry the label `key`, whatever its value.
pub(super) async fn list_labelled(
    engine: &DockerEngine,
    key: &str,
) -> Result<Vec<Leftover>, EngineError> {
    let filters = HashMap::from([("label".to_string(), vec![key.to_string()])]);
    let networks = engine
        .docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters.clone()),
        }))
        .await
        .map_err(api)?;
    let containers = engine.all_containers(filters).await?;
    let mut out: Vec<Leftover> = networks
        .into_iter()
        .map(|n| Leftover {
            kind: "network",
            id: n.id.unwrap_or_default(),
            name: n.name.unwrap_or_default(),
            labels: n.labels.unwrap_or_default().into_iter().collect(),
            created: n.created.as_deref().and_then(parse_rfc3339),
            running: false,
        })
        .collect();
    out.extend(containers.into_iter().map(|c| {
        Leftover {
            kind: "container",
            name: c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            id: c.id.unwrap_or_default(),
            labels: c.labels.unwrap_or_default().into_iter().collect(),
            created: c
                .created
                .and_then(|secs| u64::try_from(secs).ok())
                .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs(secs)),
            running: matches!(
                c.state,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                        | ContainerSummaryStateEnum::RESTARTING
                        | ContainerSummaryStateEnum::PAUSED
                )
            ),
        }
    }));
    Ok(out)
}

/// Containers (in any state) attached to the network whose id is exactly
/// `id`: id and whether it runs. The daemon's `network` filter also
/// matches names and id prefixes (a network may be named like the start
/// of another's id), so each container's own endpoints are checked for
/// the exact id.
pub(super) async fn containers_on_network(
    engine: &DockerEngine,
    id: &str,
) -> Result<Vec<(String, bool)>, EngineError> {
    if id.is_empty() {
        return Err(EngineError::Api(
            "no network id to list the containers of: the daemon listed a network without one"
                .into(),
        ));
    }
    let filters = HashMap::from([("network".to_string(), vec![id.to_string()])]);
    let containers = engine.all_containers(filters).await?;
    Ok(containers
        .into_iter()
        .filter(|c| {
            c.network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .is_some_and(|networks| {
                    networks
                        .values()
                        .any(|e| e.network_id.as_deref() == Some(id))
                })
        })
        .map(|c| {
            let running = !matches!(
                c.state,
                Some(
                    ContainerSummaryStateEnum::EXITED
                        | ContainerSummaryStateEnum::CREATED
                        | ContainerSummaryStateEnum::DEAD
                )
            );
            (c.id.unwrap_or_default(), running)
        })
        .collect())
}

/// Removes a network; one that does not exist is not an error.
pub(super) async fn remove_network(engine: &DockerEngine, name: &str) -> Result<(), EngineError> {
    match engine.docker.remove_network(name).await {
        Ok(()) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(api(err)),
    }
}

/// `2026-11-30T22:23:10.149679216Z` (or with a `+01:00` offset) as a time.
fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (clock, offset) = match time.find(['Z', '+', '-']) {
        Some(at) => time.split_at(at),
        None => (time, "Z"),
    };
    let mut t = clock
        .split('.')
        .next()?
        .splitn(3, ':')
        .map(str::parse::<i64>);
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let offset_secs = match offset {
        "Z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}
