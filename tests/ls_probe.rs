use fantoccini::{ClientBuilder, Locator};
use std::time::Duration;

#[tokio::test]
async fn probe() {
    let port = 29515;
    let mut driver = std::process::Command::new("chromedriver").arg(format!("--port={port}")).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]}
    })).unwrap();
    let c = ClientBuilder::rustls().unwrap().capabilities(caps).connect(&format!("http://127.0.0.1:{port}")).await.unwrap();
    let base = "http://127.0.0.1:28080";
    c.goto(&format!("{base}/user/login/")).await.unwrap();
    c.find(Locator::Css("input[name=email]")).await.unwrap().send_keys("admin@labelgate.test").await.unwrap();
    let pw = std::fs::read_to_string("/tmp/labelgate-label-studio-28080/password").unwrap();
    c.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(pw.trim()).await.unwrap();
    c.find(Locator::Css("form button[type=submit], form input[type=submit]")).await.unwrap().click().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.goto(&format!("{base}/projects/2/data?task=3")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    std::fs::write("/tmp/probe.png", c.screenshot().await.unwrap()).unwrap();
    std::fs::write("/tmp/probe.html", c.source().await.unwrap()).unwrap();
    c.close().await.unwrap();
    driver.kill().unwrap();
}
