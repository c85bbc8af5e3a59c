//! `LocalCluster` against real `redis-server` cluster nodes: it forms, routes keys as the
//! nodes do, moves a slot with its keys, fails a killed master over to its replica, and
//! leaves no process or directory behind.

use std::path::PathBuf;
use std::time::Duration;

use flashsale_testkit::{LocalCluster, LocalClusterOptions, Role, SLOTS};

fn three_masters() -> LocalCluster {
    LocalCluster::start(LocalClusterOptions::default()).expect("start a cluster")
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn three_masters_serve_each_key_on_the_node_owning_its_slot() {
    let cluster = three_masters();
    let nodes = cluster.nodes().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.role == Role::Master), "{nodes:?}");
    let mut seeds = cluster.seed_urls();
    seeds.sort();
    let mut urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    urls.sort();
    assert_eq!(seeds, urls);
    for node in &nodes {
        assert_ne!(node.port, 6379, "never the system server's port");
        assert_eq!(cluster.node(node.port).unwrap(), *node);
        let info = cluster.command(node.port, &["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_slots_ok:16384"), "{info}");
    }

    // The slot computed here is the one the server computes, hash tags included.
    let keys = [
        "",
        "a",
        "123456789",
        "fs:{phone-x:0}",
        "fs:{phone-x:0}:events",
        "{user1000}.following",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "no{close",
        "ünïcödé",
    ];
    let port = nodes[0].port;
    for key in keys {
        let server = cluster.command(port, &["CLUSTER", "KEYSLOT", key]).unwrap();
        assert_eq!(
            server,
            format!(":{}", LocalCluster::slot_of(key)),
            "CLUSTER KEYSLOT {key:?}"
        );
    }

    // Written through its owner, a key reads back there; any other master redirects to it.
    let mut owners = std::collections::HashSet::new();
    for n in 0..30 {
        let key = format!("key-{n}");
        let owner = cluster.master_of(&key).unwrap();
        owners.insert(owner.port);
        assert_eq!(
            cluster.command(owner.port, &["SET", &key, "v"]).unwrap(),
            "+OK"
        );
        assert_eq!(cluster.command(owner.port, &["GET", &key]).unwrap(), "v");
        let slot = LocalCluster::slot_of(&key);
        for other in nodes.iter().filter(|o| o.port != owner.port) {
            assert_eq!(
                cluster.command(other.port, &["GET", &key]).unwrap(),
                format!("-MOVED {slot} 127.0.0.1:{}", owner.port)
            );
        }
    }
    assert_eq!(owners.len(), 3, "30 keys all on one master");

    // Only its own nodes are talked to; a node never killed has nothing to fail over.
    let stranger = flashsale_testkit::free_port().unwrap();
    assert_eq!(
        cluster.command(stranger, &["PING"]).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(
        cluster
            .wait_failover(port, Duration::from_millis(1))
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::InvalidInput
    );
    assert!(cluster.reshard(&[SLOTS], port).is_err());

    // Dropped: every process gone, every directory removed.
    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    let dirs: Vec<PathBuf> = nodes
        .iter()
        .map(|n| cluster.dir(n.port).unwrap().to_owned())
        .collect();
    assert!(
        dirs.iter().all(|d| d.join("redis.log").is_file()),
        "{dirs:?}"
    );
    assert!(pids.iter().all(|&p| alive(p)));
    drop(cluster);
    for pid in pids {
        assert!(!alive(pid), "node process {pid} outlived the cluster");
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn a_moved_slot_takes_its_keys_to_the_new_owner() {
    let cluster = three_masters();
    // More keys than one MIGRATE batch, all in one slot, and one key elsewhere.
    let keys: Vec<String> = (0..250).map(|n| format!("fs:{{phone-x:0}}:{n}")).collect();
    let owner = cluster.master_of(&keys[0]).unwrap();
    for key in &keys {
        assert_eq!(
            cluster.command(owner.port, &["SET", key, key]).unwrap(),
            "+OK"
        );
    }
    let masters = cluster.masters().unwrap();
    let to = masters.iter().find(|m| m.port != owner.port).unwrap();
    let bystander = (0..)
        .map(|n| format!("other-{n}"))
        .find(|k| cluster.master_of(k).unwrap().port == owner.port)
        .unwrap();
    assert_ne!(
        LocalCluster::slot_of(&bystander),
        LocalCluster::slot_of(&keys[0])
    );
    assert_eq!(
        cluster
            .command(owner.port, &["SET", &bystander, "stays"])
            .unwrap(),
        "+OK"
    );

    let slot = cluster.move_slot_of(&keys[0], to.port).unwrap();
    assert_eq!(slot, LocalCluster::slot_of("phone-x:0"));
    assert_eq!(cluster.master_of(&keys[0]).unwrap().port, to.port);
    for key in &keys {
        assert_eq!(cluster.command(to.port, &["GET", key]).unwrap(), *key);
        assert_eq!(
            cluster.command(owner.port, &["GET", key]).unwrap(),
            format!("-MOVED {slot} 127.0.0.1:{}", to.port)
        );
    }
    let left = cluster
        .command(
            owner.port,
            &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()],
        )
        .unwrap();
    assert_eq!(left, ":0");
    // Every node, the third master included, routes the slot to its new owner.
    for node in masters.iter().filter(|m| m.port != to.port) {
        assert_eq!(
            cluster.command(node.port, &["GET", &keys[0]]).unwrap(),
            format!("-MOVED {slot} 127.0.0.1:{}", to.port)
        );
    }
    assert_eq!(cluster.master_of(&bystander).unwrap().port, owner.port);
    assert_eq!(
        cluster.command(owner.port, &["GET", &bystander]).unwrap(),
        "stays"
    );

    // Moving it where it already is changes nothing; to a port not in the cluster fails.
    cluster.reshard(&[slot], to.port).unwrap();
    assert_eq!(cluster.master_of(&keys[0]).unwrap().port, to.port);
    let stranger = flashsale_testkit::free_port().unwrap();
    assert!(cluster.move_slot_of(&keys[0], stranger).is_err());
}

#[test]
fn a_killed_master_fails_over_to_its_replica() {
    let mut cluster = LocalCluster::start(LocalClusterOptions {
        masters: 3,
        replicas: 1,
    })
    .expect("start a cluster with replicas");
    let nodes = cluster.nodes().unwrap();
    assert_eq!(nodes.len(), 6);
    let masters = cluster.masters().unwrap();
    assert_eq!(masters.len(), 3);
    assert_eq!(cluster.seed_urls().len(), 3);
    for master in &masters {
        let replicas: Vec<_> = nodes
            .iter()
            .filter(|n| {
                n.role
                    == (Role::Replica {
                        master_port: master.port,
                    })
            })
            .collect();
        assert_eq!(replicas.len(), 1, "replicas of {}: {nodes:?}", master.port);
        let info = cluster
            .command(replicas[0].port, &["INFO", "replication"])
            .unwrap();
        assert!(info.contains("master_link_status:up"), "{info}");
    }

    let key = "fs:{phone-x:1}";
    let old = cluster.master_of(key).unwrap();
    // Acknowledged by the replica before the crash (WAIT on the writing connection), so the
    // promoted replica has it.
    assert_eq!(
        cluster
            .commands(old.port, &[&["SET", key, "42"], &["WAIT", "1", "5000"]])
            .unwrap(),
        ["+OK", ":1"]
    );
    let replica = nodes
        .iter()
        .find(|n| {
            n.role
                == (Role::Replica {
                    master_port: old.port,
                })
        })
        .unwrap();
    // A replica serves reads on a connection that asked for it, and redirects the others.
    assert_eq!(
        cluster
            .commands(replica.port, &[&["READONLY"], &["GET", key]])
            .unwrap(),
        ["+OK", "42"]
    );
    assert!(cluster
        .command(replica.port, &["GET", key])
        .unwrap()
        .starts_with("-MOVED"));

    cluster.kill(old.port).unwrap();
    assert!(!alive(old.pid), "killed master still running");
    assert!(cluster.node(old.port).is_err());
    assert_eq!(cluster.nodes().unwrap().len(), 5);

    let heir = cluster
        .wait_failover(old.port, Duration::from_secs(30))
        .expect("a replica takes over");
    assert_eq!(heir.port, replica.port);
    assert_eq!(heir.role, Role::Master);
    assert_eq!(cluster.master_of(key).unwrap().port, heir.port);
    assert_eq!(cluster.command(heir.port, &["GET", key]).unwrap(), "42");
    for node in cluster.nodes().unwrap() {
        let info = cluster.command(node.port, &["CLUSTER", "INFO"]).unwrap();
        assert!(
            info.contains("cluster_state:ok"),
            "node {}: {info}",
            node.port
        );
    }
    assert_eq!(cluster.masters().unwrap().len(), 3);
    // The dead master's directory stays until the cluster drops.
    let dir = cluster.dir(old.port).unwrap().to_owned();
    assert!(dir.exists());
    drop(cluster);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
