//! The state store against a real redis-server (started by scripts/test.sh): the same contract as
//! the in-memory store, over an ACL user, over TLS, and the errors an operator sees.

use labelgate::{
    config::RedisConfig,
    state::{check_contract, redis::RedisState},
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh (it starts Redis and exports it)"))
}

fn secret(s: &str) -> labelgate::config::Secret {
    serde_json::from_value(serde_json::Value::String(s.into())).unwrap()
}

fn config(url: String, prefix: &str) -> RedisConfig {
    RedisConfig {
        url,
        username: env("LABELGATE_REDIS_USER"),
        password: Some(secret(&env("LABELGATE_REDIS_PASSWORD"))),
        tls_ca_file: None,
        key_prefix: format!("labelgate:test:{prefix}:{}:", std::process::id()),
        retention_days: 1,
        timeout_ms: 2000,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

#[test]
fn redis_with_an_acl_user_meets_the_store_contract() {
    let rt = runtime();
    let store = RedisState::connect(&config(env("LABELGATE_REDIS_URL"), "acl"), rt.handle().clone()).unwrap();
    check_contract(&store, "acl");
}

#[test]
fn redis_over_tls_meets_the_store_contract() {
    let rt = runtime();
    let mut c = config(env("LABELGATE_REDIS_TLS_URL"), "tls");
    c.tls_ca_file = Some(env("LABELGATE_REDIS_CA").into());
    let store = RedisState::connect(&c, rt.handle().clone()).unwrap();
    check_contract(&store, "tls");
}

#[test]
fn a_wrong_password_or_an_absent_server_is_a_clear_error() {
    let rt = runtime();
    let mut c = config(env("LABELGATE_REDIS_URL"), "bad");
    c.password = Some(secret("not-the-password"));
    let err = RedisState::connect(&c, rt.handle().clone()).err().expect("wrong password refused");
    assert_eq!(err.recovery(), labelgate::state::Recovery::Stop, "waiting cannot fix a refused password: {err}");
    let err = format!("{:#}", anyhow::Error::new(err));
    assert!(err.contains("state.redis.username / state.redis.password") && err.contains("AuthenticationFailed"), "{err}");
    assert!(!err.contains("not-the-password"), "the password never prints: {err}");
    let mut c = config("redis://127.0.0.1:1/0".into(), "absent");
    c.timeout_ms = 300;
    let err = RedisState::connect(&c, rt.handle().clone()).err().expect("nothing listens on port 1").to_string();
    assert!(err.contains("unreachable"), "{err}");
}
