//! Raw mail in S3, content-addressed: `raw/<first 2 hex>/<sha256>.eml`.

use async_trait::async_trait;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::primitives::ByteStream;

use super::{classify, http_status};
use crate::domain::ids::RawMailKey;
use crate::ports::{BackendError, BackendResult, RawMailStore};

/// The content type raw messages are stored with.
const RAW_CONTENT_TYPE: &str = "message/rfc822";

pub struct S3RawStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3RawStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self { client, bucket: bucket.into() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of a raw message. The two-character fan-out keeps listings and S3's
    /// per-prefix request rates spread out.
    pub fn object_key(key: &RawMailKey) -> String {
        let hex = key.as_str();
        format!("raw/{}/{hex}.eml", &hex[..2])
    }

    /// Reads any object, e.g. the one SES wrote under `inbound/`. `None` when it does not exist.
    ///
    /// Without `s3:ListBucket` on the bucket, S3 answers a missing key with 403 instead of 404;
    /// that stays an error here, because it cannot be told apart from a real denial.
    pub async fn get_object(&self, bucket: &str, key: &str) -> BackendResult<Option<Vec<u8>>> {
        const OP: &str = "s3 get object";
        let output = match self.client.get_object().bucket(bucket).key(key).send().await {
            Ok(output) => output,
            Err(err) => {
                if matches!(err.as_service_error(), Some(GetObjectError::NoSuchKey(_)))
                    || http_status(&err) == Some(404)
                {
                    return Ok(None);
                }
                return Err(classify(OP, err));
            }
        };
        // A body cut off mid-stream is a dropped connection: worth a retry.
        let bytes = output.body.collect().await.map_err(|e| BackendError::transient(OP, e))?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    /// Whether the object exists. `None` when S3 will not say (403 without `s3:ListBucket`).
    async fn exists(&self, key: &str) -> BackendResult<Option<bool>> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(Some(true)),
            Err(err) => match (err.as_service_error(), http_status(&err)) {
                (Some(HeadObjectError::NotFound(_)), _) | (_, Some(404)) => Ok(Some(false)),
                (_, Some(403)) => Ok(None),
                _ => Err(classify("s3 head object", err)),
            },
        }
    }
}

#[async_trait]
impl RawMailStore for S3RawStore {
    /// Idempotent: the key is the content's hash, and an existing object is not written again
    /// (saving a PUT and, on a versioned bucket, a redundant version on every redelivery).
    async fn put(&self, raw: &[u8]) -> BackendResult<RawMailKey> {
        let key = RawMailKey::of(raw);
        let object_key = Self::object_key(&key);
        if self.exists(&object_key).await? == Some(true) {
            return Ok(key);
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .content_type(RAW_CONTENT_TYPE)
            .body(ByteStream::from(raw.to_vec()))
            .send()
            .await
            .map_err(|e| classify("s3 put object", e))?;
        Ok(key)
    }

    async fn get(&self, key: &RawMailKey) -> BackendResult<Option<Vec<u8>>> {
        self.get_object(&self.bucket, &Self::object_key(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fan_out_by_the_first_two_hex_digits() {
        let key = RawMailKey::of(b"hello");
        let object = S3RawStore::object_key(&key);
        assert_eq!(object, format!("raw/{}/{}.eml", &key.as_str()[..2], key.as_str()));
        assert!(object.starts_with("raw/2c/"), "{object}");
    }
}
