//! [`StoreClient`] calls that compare and mend replicas: paged listings, the
//! index digest, raw needles, needle repair, bulk sync and the removal of an
//! empty replica (`docs/ARCHITECTURE.md`, "Store node HTTP API").

use reqwest::Method;

use super::{ClientError, StoreClient, checked, read_json};
use crate::api::{
    DeletedPage, NeedlePage, NeedleRepairAnswer, PageQuery, ScrubPage, SyncReport, format_key,
};
use crate::format::NEEDLE_SIZE_MAX;
use crate::repair::InventoryDigest;

impl StoreClient {
    /// `GET /volumes/{vid}/needles?after=KEY&limit=N`: a page of the
    /// replica's index (`limit` entries at most).
    pub async fn needle_page(
        &self,
        volume: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<NeedlePage, ClientError> {
        self.page(&format!("/volumes/{volume}/needles"), after, limit)
            .await
    }

    /// `GET /volumes/{vid}/deleted?after=KEY&limit=N`: a page of the
    /// replica's deleted keys.
    pub async fn deleted_page(
        &self,
        volume: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<DeletedPage, ClientError> {
        self.page(&format!("/volumes/{volume}/deleted"), after, limit)
            .await
    }

    /// Every deleted key of the replica, page by page.
    pub async fn deleted_keys(&self, volume: u32) -> Result<Vec<u64>, ClientError> {
        crate::api::every_page(
            |after| async move {
                let page = self
                    .deleted_page(volume, after, crate::api::PAGE_ENTRIES_MAX)
                    .await?;
                Ok((page.keys, page.next_after))
            },
            || ClientError::InvalidResponse("deleted-key pages do not advance".into()),
        )
        .await
    }

    async fn page<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<T, ClientError> {
        let query = PageQuery {
            after: after.map(format_key),
            limit: Some(limit),
        };
        let request = self
            .request(Method::GET, path, self.request_timeout())
            .query(&query);
        read_json(checked(request.send().await?).await?).await
    }

    /// `POST /volumes/{vid}/scrub`: has the replica read and check up to
    /// `limit` needles above `after`.
    pub async fn scrub(
        &self,
        volume: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<ScrubPage, ClientError> {
        let query = PageQuery {
            after: after.map(format_key),
            limit: Some(limit),
        };
        let request = self
            .request(
                Method::POST,
                &format!("/volumes/{volume}/scrub"),
                self.request_timeout(),
            )
            .query(&query);
        read_json(checked(request.send().await?).await?).await
    }

    /// `GET /volumes/{vid}/digest`: the digest of the replica's index.
    pub async fn inventory_digest(&self, volume: u32) -> Result<InventoryDigest, ClientError> {
        self.json(Method::GET, format!("/volumes/{volume}/digest"))
            .await
    }

    /// `GET /volumes/{vid}/needles/{key}/raw`: the needle's on-disk bytes,
    /// verified by the node (the caller checks them again).
    pub async fn raw_needle(&self, volume: u32, key: u64) -> Result<Vec<u8>, ClientError> {
        let path = format!("/volumes/{volume}/needles/{}/raw", format_key(key));
        let request = self.request(Method::GET, &path, self.transfer_timeout());
        let response = checked(request.send().await?).await?;
        if response
            .content_length()
            .is_none_or(|len| len > NEEDLE_SIZE_MAX)
        {
            return Err(ClientError::InvalidResponse(
                "raw needle without a usable Content-Length".into(),
            ));
        }
        Ok(response.bytes().await?.to_vec())
    }

    /// `POST /volumes/{vid}/needles/{key}/repair?from=URL,...`: asks this node
    /// to mend its copy of the needle from the first peer with a good one.
    pub async fn repair_needle(
        &self,
        volume: u32,
        key: u64,
        peers: &[String],
    ) -> Result<NeedleRepairAnswer, ClientError> {
        let path = format!("/volumes/{volume}/needles/{}/repair", format_key(key));
        let request = self
            .request(Method::POST, &path, self.transfer_timeout())
            .query(&[("from", peers.join(","))]);
        read_json(checked(request.send().await?).await?).await
    }

    /// `POST /volumes/{vid}/sync?from=URL&also=URL,...`: asks this node to
    /// bring its replica up to date with the (locked or read-only) replica at
    /// `from_url`, taking a needle that fails its checks there from its own
    /// earlier copy or from the peers in `also`.
    pub async fn sync_volume(
        &self,
        volume: u32,
        from_url: &str,
        also: &[String],
    ) -> Result<SyncReport, ClientError> {
        let mut query = vec![("from", from_url.to_owned())];
        if !also.is_empty() {
            query.push(("also", also.join(",")));
        }
        self.sync(volume, &query).await
    }

    /// `POST /volumes/{vid}/sync?from=URL&deletes_only=true`: asks this node
    /// to apply every delete the replica at `from_url` holds, and nothing
    /// else (`method` `deletes`).
    pub async fn sync_deletes(
        &self,
        volume: u32,
        from_url: &str,
    ) -> Result<SyncReport, ClientError> {
        let query = [
            ("from", from_url.to_owned()),
            ("deletes_only", "true".into()),
        ];
        self.sync(volume, &query).await
    }

    async fn sync(&self, volume: u32, query: &[(&str, String)]) -> Result<SyncReport, ClientError> {
        let path = format!("/volumes/{volume}/sync");
        let request = self
            .request(Method::POST, &path, self.transfer_timeout())
            .query(query);
        read_json(checked(request.send().await?).await?).await
    }

    /// `POST /volumes/{vid}/retire`: removes a locked replica whose volume
    /// the warm tier now holds.
    pub async fn retire_volume(&self, volume: u32) -> Result<(), ClientError> {
        let path = format!("/volumes/{volume}/retire");
        let request = self.request(Method::POST, &path, self.request_timeout());
        checked(request.send().await?).await?;
        Ok(())
    }

    /// `DELETE /volumes/{vid}`: removes the replica if it never held a
    /// needle (`ClientError::Status` with code `not_empty` otherwise).
    pub async fn remove_empty_volume(&self, volume: u32) -> Result<(), ClientError> {
        let path = format!("/volumes/{volume}");
        let request = self.request(Method::DELETE, &path, self.request_timeout());
        checked(request.send().await?).await?;
        Ok(())
    }
}
