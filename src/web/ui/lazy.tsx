import type { ComponentType } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ErrorBox, Loading } from "./states.tsx";

/** A page whose code is a separate chunk, fetched when first shown. */
export function Lazy<P extends object>(props: { load: () => Promise<ComponentType<P>>; props: P }) {
  const [Page, setPage] = useState<ComponentType<P> | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    props.load().then((c) => setPage(() => c), setError);
  }, [props.load]);
  if (error !== null) return <ErrorBox error={error} />;
  if (!Page) return <Loading />;
  return <Page {...props.props} />;
}
