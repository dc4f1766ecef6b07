//! What the bridge must remember across restarts, per Label Studio project: which suspect
//! (vendor, sample) has which task (Label Studio has no upsert, so this is what keeps a replayed
//! suspect from becoming a second task), which suspects are being imported right now (so that a
//! crash mid-import is reconciled against Label Studio before anything is imported again), and
//! which label each annotation last sent to the reviews topic. Redis in production (keys under
//! `state.redis.key_prefix`, see docs/state.md), memory for unit tests.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `review_bridge:{project}:tasks` | hash | suspect key → task id |
//! | `review_bridge:{project}:importing` | hash | suspect key → when its import started (unix ms) |
//! | `review_bridge:{project}:answers` | hash | annotation id → final label forwarded |

use std::{collections::HashMap, sync::Mutex};

use redis::{aio::ConnectionManager, AsyncCommands};

use crate::state::StateError;

pub enum TaskMap {
    Memory(Mutex<Memory>),
    Redis { connection: ConnectionManager, prefix: String },
}

#[derive(Default)]
pub struct Memory {
    tasks: HashMap<(i64, String), i64>,
    importing: HashMap<(i64, String), u64>,
    answers: HashMap<(i64, i64), String>,
}

fn unavailable(e: redis::RedisError) -> StateError {
    StateError::from_redis(e)
}

impl TaskMap {
    pub fn memory() -> Self {
        TaskMap::Memory(Mutex::new(Memory::default()))
    }

    fn key(prefix: &str, project: i64, what: &str) -> String {
        format!("{prefix}review_bridge:{project}:{what}")
    }

    /// The task of each key, if it has one.
    pub async fn task_ids(&self, project: i64, keys: &[String]) -> Result<Vec<Option<i64>>, StateError> {
        match self {
            TaskMap::Memory(m) => {
                let m = m.lock().unwrap();
                Ok(keys.iter().map(|k| m.tasks.get(&(project, k.clone())).copied()).collect())
            }
            TaskMap::Redis { connection, prefix } => {
                if keys.is_empty() {
                    return Ok(vec![]);
                }
                let mut c = connection.clone();
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(Self::key(prefix, project, "tasks")).arg(keys);
                cmd.query_async(&mut c).await.map_err(unavailable)
            }
        }
    }

    /// Marks keys as being imported, from `now_ms`.
    pub async fn begin_import(&self, project: i64, keys: &[String], now_ms: u64) -> Result<(), StateError> {
        match self {
            TaskMap::Memory(m) => {
                let mut m = m.lock().unwrap();
                for k in keys {
                    m.importing.insert((project, k.clone()), now_ms);
                }
                Ok(())
            }
            TaskMap::Redis { connection, prefix } => {
                if keys.is_empty() {
                    return Ok(());
                }
                let items: Vec<(&String, u64)> = keys.iter().map(|k| (k, now_ms)).collect();
                let mut c = connection.clone();
                c.hset_multiple::<_, _, _, ()>(Self::key(prefix, project, "importing"), &items).await.map_err(unavailable)
            }
        }
    }

    /// Records the tasks made and clears the import marks of `settled` (all in one transaction).
    pub async fn finish_import(&self, project: i64, tasks: &[(String, i64)], settled: &[String]) -> Result<(), StateError> {
        match self {
            TaskMap::Memory(m) => {
                let mut m = m.lock().unwrap();
                for (k, id) in tasks {
                    m.tasks.insert((project, k.clone()), *id);
                }
                for k in settled {
                    m.importing.remove(&(project, k.clone()));
                }
                Ok(())
            }
            TaskMap::Redis { connection, prefix } => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                if !tasks.is_empty() {
                    pipe.hset_multiple(Self::key(prefix, project, "tasks"), tasks).ignore();
                }
                if !settled.is_empty() {
                    pipe.hdel(Self::key(prefix, project, "importing"), settled).ignore();
                }
                let mut c = connection.clone();
                pipe.query_async::<()>(&mut c).await.map_err(unavailable)
            }
        }
    }

    /// Keys whose import started but was not settled, with when it started (unix ms).
    pub async fn importing(&self, project: i64) -> Result<Vec<(String, u64)>, StateError> {
        match self {
            TaskMap::Memory(m) => Ok(m.lock().unwrap().importing.iter().filter(|((p, _), _)| *p == project).map(|((_, k), t)| (k.clone(), *t)).collect()),
            TaskMap::Redis { connection, prefix } => {
                let mut c = connection.clone();
                let all: HashMap<String, u64> = c.hgetall(Self::key(prefix, project, "importing")).await.map_err(unavailable)?;
                Ok(all.into_iter().collect())
            }
        }
    }

    /// Tasks recorded for the project.
    pub async fn task_count(&self, project: i64) -> Result<usize, StateError> {
        match self {
            TaskMap::Memory(m) => Ok(m.lock().unwrap().tasks.keys().filter(|(p, _)| *p == project).count()),
            TaskMap::Redis { connection, prefix } => {
                let mut c = connection.clone();
                c.hlen(Self::key(prefix, project, "tasks")).await.map_err(unavailable)
            }
        }
    }

    /// The label last forwarded for an annotation.
    pub async fn forwarded(&self, project: i64, annotation: i64) -> Result<Option<String>, StateError> {
        match self {
            TaskMap::Memory(m) => Ok(m.lock().unwrap().answers.get(&(project, annotation)).cloned()),
            TaskMap::Redis { connection, prefix } => {
                let mut c = connection.clone();
                c.hget(Self::key(prefix, project, "answers"), annotation).await.map_err(unavailable)
            }
        }
    }

    pub async fn record_forwarded(&self, project: i64, annotation: i64, label: &str) -> Result<(), StateError> {
        match self {
            TaskMap::Memory(m) => {
                m.lock().unwrap().answers.insert((project, annotation), label.to_string());
                Ok(())
            }
            TaskMap::Redis { connection, prefix } => {
                let mut c = connection.clone();
                c.hset::<_, _, _, ()>(Self::key(prefix, project, "answers"), annotation, label).await.map_err(unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn imports_are_marked_until_settled_and_projects_are_apart() {
        let map = TaskMap::memory();
        let keys = vec!["a".to_string(), "b".to_string()];
        map.begin_import(1, &keys, 5).await.unwrap();
        assert_eq!(map.importing(1).await.unwrap().len(), 2);
        map.finish_import(1, &[("a".into(), 10)], &keys).await.unwrap();
        assert!(map.importing(1).await.unwrap().is_empty());
        assert_eq!(map.task_ids(1, &keys).await.unwrap(), vec![Some(10), None]);
        assert_eq!(map.task_ids(2, &keys).await.unwrap(), vec![None, None]);
        map.record_forwarded(1, 7, "cat").await.unwrap();
        assert_eq!(map.forwarded(1, 7).await.unwrap().as_deref(), Some("cat"));
        assert_eq!(map.forwarded(2, 7).await.unwrap(), None);
    }
}
