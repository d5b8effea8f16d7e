/** Bun's `with { type: "text" }` imports: the file's contents as a string. */
declare module "*.sh" {
  const text: string;
  export default text;
}
