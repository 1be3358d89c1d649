//! `checkout-app saga ...`: operator commands over the orchestrator's HTTP API.

use serde_json::Value;

use crate::cli::SagaAction;
use crate::error::{Error, Result};

/// Runs an operator action and prints the answer.
///
/// # Errors
/// When the orchestrator is unreachable or refuses.
pub async fn run(action: SagaAction, orchestrator_url: &str, token: Option<&str>) -> Result<()> {
    let base = orchestrator_url.trim_end_matches('/');
    let http = reqwest::Client::new();
    let request = match &action {
        SagaAction::Show { id } => http.get(format!("{base}/sagas/{id}")),
        SagaAction::List {
            status,
            stuck,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(status) = status {
                query.push(("status", status.clone()));
            }
            if *stuck {
                query.push(("stuck", "true".to_owned()));
            }
            http.get(format!("{base}/sagas")).query(&query)
        }
        SagaAction::Retry { id } => http.post(format!("{base}/sagas/{id}/retry")),
        SagaAction::Cancel { id } => http.post(format!("{base}/sagas/{id}/cancel")),
        SagaAction::Resume { id } => http.post(format!("{base}/sagas/{id}/resume")),
        SagaAction::Prune { older_than } => http
            .post(format!("{base}/sagas/prune"))
            .query(&[("olderThan", older_than)]),
    };
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let upstream = |message: String| Error::Upstream {
        service: "orchestrator",
        message,
    };
    let response = request.send().await.map_err(|e| upstream(e.to_string()))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| upstream(e.to_string()))?;
    if let SagaAction::List { .. } = action
        && status.is_success()
    {
        print_list(&body);
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(upstream(format!("status {status}")))
    }
}

fn print_list(body: &Value) {
    let empty = Vec::new();
    let sagas = body["sagas"].as_array().unwrap_or(&empty);
    println!("{:<38} {:<13} {:<18} UPDATED", "SAGA", "STATUS", "STEP");
    for saga in sagas {
        println!(
            "{:<38} {:<13} {:<18} {}",
            saga["id"].as_str().unwrap_or_default(),
            saga["status"].as_str().unwrap_or_default(),
            saga["currentStep"].as_str().unwrap_or("-"),
            saga["updatedAt"].as_str().unwrap_or_default()
        );
        if let Some(detail) = saga["stuck"]["detail"].as_str() {
            println!("    stuck: {detail}");
        }
    }
    println!("{} saga(s)", sagas.len());
}
