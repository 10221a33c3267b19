use super::*;

fn key(model: &str) -> PoolKey {
    PoolKey {
        account: "a".into(),
        chat_type: "t2t".into(),
        model: model.into(),
    }
}

fn chat(id: &str, made_ms: u64) -> ReadyChat {
    ReadyChat {
        id: id.into(),
        made_ms,
    }
}

#[tokio::test]
async fn a_take_hands_out_the_oldest_fresh_chat_once_and_passes_the_expired() {
    let store = MemoryPool::default();
    let k = key("m");
    for (id, made) in [("old1", 10), ("old2", 20), ("c1", 100), ("c2", 110)] {
        store.put(&k, chat(id, made)).await.unwrap();
    }
    let taken = store.take(&k, 50).await.unwrap();
    assert_eq!(taken.chat, Some(chat("c1", 100)));
    assert_eq!(taken.expired, vec![chat("old1", 10), chat("old2", 20)]);
    assert_eq!(store.len(&k).await.unwrap(), 1);
    assert_eq!(
        store.take(&k, 50).await.unwrap().chat,
        Some(chat("c2", 110))
    );
    assert_eq!(store.take(&k, 50).await.unwrap(), Taken::default());
    // Pools are apart: another model's chats are not handed out here.
    store.put(&key("other"), chat("o", 100)).await.unwrap();
    assert_eq!(store.take(&k, 50).await.unwrap().chat, None);
}

#[tokio::test]
async fn the_sweep_takes_out_only_the_expired_prefix() {
    let store = MemoryPool::default();
    store.put(&key("m"), chat("old", 10)).await.unwrap();
    store.put(&key("m"), chat("new", 100)).await.unwrap();
    store.put(&key("n"), chat("old-n", 20)).await.unwrap();
    let mut expired = store.take_expired(50).await.unwrap();
    expired.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    assert_eq!(
        expired,
        vec![(key("m"), chat("old", 10)), (key("n"), chat("old-n", 20))]
    );
    assert_eq!(store.len(&key("m")).await.unwrap(), 1);
    assert_eq!(store.len(&key("n")).await.unwrap(), 0);
    assert_eq!(
        store.clear(&key("m")).await.unwrap(),
        vec![chat("new", 100)]
    );
}
